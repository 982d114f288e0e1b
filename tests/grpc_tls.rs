//! TLS on the node's gRPC port (Fabric's General.TLS), with Fabric's
//! cryptogen material and real processes: a node with `--tls-cert` serves
//! Broadcast and Deliver to TLS clients (the library's dialer and the
//! `bench` command's flags); a plaintext client, a client trusting another
//! CA, and one expecting another server name are refused with errors that
//! say so; with `--tls-client-root-ca` a client without a certificate, or
//! with one from another CA, is refused and one from the orderer org's CA
//! works, and its Deliver requests must be bound to its certificate (the
//! channel header's `tls_cert_hash`, as Fabric checks); a certificate
//! from the TLS CA of an organization of one of the node's channels is
//! accepted too, as Fabric accepts it; the flags are checked at start.

mod common;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use consenter_host::proto::orderer::atomic_broadcast_client::AtomicBroadcastClient;
use consenter_host::tls::{self, dial};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures/fabric")
}

fn orderer_org(p: &str) -> String {
    fixtures().join("crypto/ordererOrganizations/example.com").join(p).to_string_lossy().into_owned()
}

fn org1(p: &str) -> String {
    fixtures().join("crypto/peerOrganizations/org1.example.com").join(p).to_string_lossy().into_owned()
}

/// The orderer org's TLS CA (it issued every orderer and admin TLS cert).
fn tlsca() -> String {
    orderer_org("tlsca/tlsca.example.com-cert.pem")
}

fn org1_tlsca() -> String {
    org1("tlsca/tlsca.org1.example.com-cert.pem")
}

/// A node with orderer0's TLS certificate on its gRPC port and the
/// development channel (open policies, 50 ms batches).
fn tls_node(dir: &Path, extra: &[&str]) -> NodeProc {
    let cert = orderer_org("orderers/orderer0.example.com/tls/server.crt");
    let key = orderer_org("orderers/orderer0.example.com/tls/server.key");
    let mut args = vec!["--tls-cert", &cert, "--tls-key", &key, "--dev-batch-timeout", "50ms"];
    args.extend_from_slice(extra);
    let node = NodeProc::start_logged(dir, &args, &dir.with_extension("log"));
    assert!(node.banner[0].contains("TLS"), "{:?}", node.banner);
    let point = (0..3).map(|_| node.next_line()).find(|l| l.starts_with("point a Fabric client"));
    assert!(point.as_deref().is_some_and(|l| l.contains("grpcs://")), "{point:?}");
    node
}

fn bench(node: &NodeProc, data: &Path, tls_args: &[&str]) -> (bool, String) {
    let msp = data.join("dev-identity/client/msp");
    let out = Command::new(env!("CARGO_BIN_EXE_consenter-host"))
        .arg("bench")
        .args(["--orderer", &node.addr, "--messages", "40", "--clients", "2", "--size", "100"])
        .args(["--msp-dir", msp.to_str().unwrap(), "--mspid", "DevMSP", "--commit-timeout", "20s"])
        .args(tls_args)
        .output()
        .unwrap();
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

fn client_tls(ca: &str, identity: Option<(&str, &str)>, name: Option<&str>) -> dial::ClientTls {
    let config =
        tls::grpc_client_config(&[PathBuf::from(ca)], identity.map(|(c, k)| (Path::new(c), Path::new(k)))).unwrap();
    dial::ClientTls { config, server_name: name.map(|n| tls::parse_server_name(n).unwrap()) }
}

fn node_log(dir: &Path) -> String {
    let mut s = String::new();
    std::fs::File::open(dir.with_extension("log")).unwrap().read_to_string(&mut s).unwrap();
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_node_serves_tls_clients_and_refuses_others() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let node = tls_node(&data, &[]);

    // Broadcast and Deliver over TLS (no client certificate: the port
    // asks for one but does not require it, as Fabric's default).
    let ch = dial::connect(&node.addr, Some(client_tls(&tlsca(), None, None))).await.unwrap();
    let mut c = AtomicBroadcastClient::new(ch);
    let acks =
        broadcast_all(&mut c, vec![message("devchannel", "tls-1", 64), message("devchannel", "tls-2", 64)]).await;
    assert!(acks.iter().all(|(s, _)| *s == 200), "{acks:?}");
    let blocks = deliver(&mut c, "devchannel", 0, 1).await;
    assert_eq!(blocks.len(), 2);
    assert_eq!(blocks[1].header.as_ref().unwrap().number, 1);
    // A client certificate is accepted too (and not chain-checked: Org1's
    // user, from a CA the node was not told about).
    let user =
        (org1("users/User1@org1.example.com/tls/client.crt"), org1("users/User1@org1.example.com/tls/client.key"));
    let ch = dial::connect(&node.addr, Some(client_tls(&tlsca(), Some((&user.0, &user.1)), None))).await.unwrap();
    assert_eq!(deliver(&mut AtomicBroadcastClient::new(ch), "devchannel", 0, 0).await.len(), 1);

    // The bench command with --tls-root-ca.
    let (ok, out) = bench(&node, &data, &["--tls-root-ca", &tlsca()]);
    assert!(ok && out.contains("envelopes seen: 40"), "{out}");
    // --tls-server-name: the certificate's DNS name instead of the IP.
    let (ok, out) = bench(&node, &data, &["--tls-root-ca", &tlsca(), "--tls-server-name", "orderer0.example.com"]);
    assert!(ok, "{out}");

    // A plaintext client: refused; the node logs the failed handshake.
    let (ok, out) = bench(&node, &data, &[]);
    assert!(!ok, "{out}");
    assert!(out.contains(&format!("connecting to {}", node.addr)) && out.contains("pass --tls-root-ca"), "{out}");
    assert!(node_log(&data).contains("TLS handshake refused"), "{}", node_log(&data));
    // Trusting another CA: the node's certificate does not verify.
    let (ok, out) = bench(&node, &data, &["--tls-root-ca", &org1_tlsca()]);
    assert!(!ok, "{out}");
    assert!(out.contains("TLS handshake with") && out.contains("invalid peer certificate: UnknownIssuer"), "{out}");
    assert!(out.contains("does not verify against the trusted root CAs (--tls-root-ca)"), "{out}");
    // Another server name: not in the certificate.
    let (ok, out) = bench(&node, &data, &["--tls-root-ca", &tlsca(), "--tls-server-name", "orderer1.example.com"]);
    assert!(!ok && out.contains("certificate not valid for name \"orderer1.example.com\""), "{out}");
    let e = dial::connect(&node.addr, Some(client_tls(&org1_tlsca(), None, None))).await.unwrap_err();
    assert!(matches!(e, dial::DialError::Handshake { .. }), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_root_ca_requires_client_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let node = tls_node(&data, &["--tls-client-root-ca", &tlsca()]);
    let admin =
        (orderer_org("users/Admin@example.com/tls/client.crt"), orderer_org("users/Admin@example.com/tls/client.key"));
    let user =
        (org1("users/User1@org1.example.com/tls/client.crt"), org1("users/User1@org1.example.com/tls/client.key"));

    // No client certificate: refused.
    let (ok, out) = bench(&node, &data, &["--tls-root-ca", &tlsca()]);
    assert!(!ok, "{out}");
    assert!(out.contains("CertificateRequired") && out.contains("pass --tls-client-cert"), "{out}");
    // A certificate from Org1's TLS CA: refused.
    let (ok, out) =
        bench(&node, &data, &["--tls-root-ca", &tlsca(), "--tls-client-cert", &user.0, "--tls-client-key", &user.1]);
    assert!(!ok, "{out}");
    assert!(out.contains("refused the client certificate"), "{out}");
    // The orderer org's admin: served.
    let (ok, out) =
        bench(&node, &data, &["--tls-root-ca", &tlsca(), "--tls-client-cert", &admin.0, "--tls-client-key", &admin.1]);
    assert!(ok && out.contains("envelopes seen: 40"), "{out}");
    // orderer1's server certificate works as a client certificate (both
    // EKUs, as Fabric's etcdraft uses it).
    let o1 = (
        orderer_org("orderers/orderer1.example.com/tls/server.crt"),
        orderer_org("orderers/orderer1.example.com/tls/server.key"),
    );
    let ch = dial::connect(&node.addr, Some(client_tls(&tlsca(), Some((&o1.0, &o1.1)), None))).await.unwrap();
    let mut c = AtomicBroadcastClient::new(ch);
    let acks = broadcast_all(&mut c, vec![message("devchannel", "mtls", 64)]).await;
    assert_eq!(acks[0].0, 200, "{acks:?}");

    // Deliver is bound to the client certificate (Fabric's mutual TLS
    // binding): the channel header must carry its SHA-256. `bench` above
    // sent it; a request without it, or with another certificate's, gets
    // BAD_REQUEST.
    let hash_of = |pem_file: &str| {
        use sha2::Digest;
        let der = tls::load_certs("cert", Path::new(pem_file)).unwrap().remove(0);
        bytes::Bytes::copy_from_slice(&sha2::Sha256::digest(&der))
    };
    let bound = |hash: bytes::Bytes| {
        use consenter_host::proto::orderer::{SeekInfo, SeekPosition, SeekSpecified, seek_position::Type as Pos};
        use prost::Message;
        let pos = |n| SeekPosition { r#type: Some(Pos::Specified(SeekSpecified { number: n })) };
        let seek = SeekInfo { start: Some(pos(0)), stop: Some(pos(0)), behavior: 0, error_response: 0 };
        let kind = consenter_host::proto::common::HeaderType::DeliverSeekInfo;
        let b = consenter_host::envelope::build_bound("devchannel", kind, "", seek.encode_to_vec().into(), None, hash)
            .unwrap();
        consenter_host::proto::common::Envelope::decode(b).unwrap()
    };
    for (what, hash, want) in [
        ("no hash", bytes::Bytes::new(), (vec![], Some(400))),
        ("admin's hash on orderer1's connection", hash_of(&admin.0), (vec![], Some(400))),
        ("orderer1's hash", hash_of(&o1.0), (vec![0], Some(200))),
    ] {
        assert_eq!(deliver_raw(&mut c, bound(hash)).await, want, "{what}");
    }
    let log = node_log(&data);
    assert!(log.contains("didn't include its TLS cert hash"), "{log}");
    assert!(log.contains("claimed TLS cert hash is"), "{log}");
}

/// With client certificates required, a certificate from the TLS CA of
/// an organization of one of the node's channels is accepted although no
/// `--tls-client-root-ca` names that CA (Fabric adds the channels' TLS CAs
/// to its listener): User1@org1 benches solochannel with its own TLS
/// certificate. (On a node with the development channel only, the same
/// certificate is refused: `client_root_ca_requires_client_certificates`.)
#[test]
fn a_channels_organizations_may_present_their_tls_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let o0 = |p: &str| orderer_org(&format!("orderers/orderer0.example.com/{p}"));
    let genesis = fixtures().join("blocks/solochannel.genesis.block").to_string_lossy().into_owned();
    let (msp, cert, key, ca) = (o0("msp"), o0("tls/server.crt"), o0("tls/server.key"), tlsca());
    let args = [
        "--msp-dir",
        &msp,
        "--mspid",
        "OrdererMSP",
        "--tls-cert",
        &cert,
        "--tls-key",
        &key,
        "--tls-client-root-ca",
        &ca,
        "--genesis-block",
        &genesis,
    ];
    let node = NodeProc::start_logged(&data, &args, &data.with_extension("log"));
    let user = |p: &str| org1(&format!("users/User1@org1.example.com/{p}"));
    let out = Command::new(env!("CARGO_BIN_EXE_consenter-host"))
        .arg("bench")
        .args(["--orderer", &node.addr, "--channel", "solochannel", "--messages", "20", "--clients", "1"])
        .args(["--msp-dir", &user("msp"), "--mspid", "Org1MSP", "--commit-timeout", "20s", "--tls-root-ca", &ca])
        .args(["--tls-client-cert", &user("tls/client.crt"), "--tls-client-key", &user("tls/client.key")])
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && text.contains("envelopes seen: 20"), "{text}");
}

#[test]
fn tls_flags_are_checked_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cert = orderer_org("orderers/orderer0.example.com/tls/server.crt");
    let key = orderer_org("orderers/orderer0.example.com/tls/server.key");
    let start = |args: &[&str]| {
        cli(&[&["start", "--data-dir", d.to_str().unwrap(), "--listen", "127.0.0.1:0", "--no-admin"], args].concat())
    };
    let (ok, out) = start(&["--tls-cert", &cert]);
    assert!(!ok && out.contains("--tls-key"), "{out}");
    let (ok, out) = start(&["--tls-client-root-ca", &tlsca()]);
    assert!(!ok && out.contains("--tls-cert"), "{out}");
    let (ok, out) = start(&["--tls-cert", &cert, "--tls-key", &cert]);
    assert!(!ok && out.contains("TLS key (--tls-key)") && out.contains("holds no private key"), "{out}");
    let other = orderer_org("orderers/orderer1.example.com/tls/server.key");
    let (ok, out) = start(&["--tls-cert", &cert, "--tls-key", &other]);
    assert!(!ok && out.contains("orderer1.example.com/tls/server.key"), "{out}");
    let (ok, out) = start(&["--tls-cert", &cert, "--tls-key", &key, "--tls-client-root-ca", &key]);
    assert!(!ok && out.contains("--tls-client-root-ca") && out.contains("server.key"), "{out}");
    let missing = d.join("missing.pem");
    let (ok, out) = start(&["--tls-cert", &cert, "--tls-key", &key, "--tls-root-ca", missing.to_str().unwrap()]);
    assert!(!ok && out.contains("reading TLS root CA (--tls-root-ca)") && out.contains("missing.pem"), "{out}");
    // The client flags.
    let (ok, out) = cli(&["bench", "--tls-client-cert", &cert, "--tls-client-key", &key]);
    assert!(!ok && out.contains("--tls-root-ca"), "{out}");
    let (ok, out) = cli(&["bench", "--tls-root-ca", &tlsca(), "--tls-server-name", "bad name", "--messages", "1"]);
    assert!(!ok && out.contains("not a TLS server name"), "{out}");
}
