//! The admin endpoint over mutual TLS, with Fabric's cryptogen material:
//! the orderer org's Admin joins and lists channels with the CLI speaking
//! osnadmin's flags; no client certificate, or one from another CA, is
//! refused at the handshake; an admin CN list answers 403 to other
//! certificates; with TLS the endpoint may listen on any address; the
//! flags are checked at start.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures/fabric")
}

/// A path under the orderer organization example.com, as a string.
fn orderer_org(p: &str) -> String {
    fixtures().join("crypto/ordererOrganizations/example.com").join(p).to_string_lossy().into_owned()
}

fn org1(p: &str) -> String {
    fixtures().join("crypto/peerOrganizations/org1.example.com").join(p).to_string_lossy().into_owned()
}

/// The orderer org's TLS CA: it issued every orderer and admin TLS cert.
fn tlsca() -> String {
    orderer_org("tlsca/tlsca.example.com-cert.pem")
}

fn org1_tlsca() -> String {
    org1("tlsca/tlsca.org1.example.com-cert.pem")
}

/// A node as orderer0 (its MSP, its TLS certificate on the admin
/// endpoint), no channel.
fn tls_node(dir: &Path, extra: &[&str]) -> NodeProc {
    let msp = orderer_org("orderers/orderer0.example.com/msp");
    let cert = orderer_org("orderers/orderer0.example.com/tls/server.crt");
    let key = orderer_org("orderers/orderer0.example.com/tls/server.key");
    let mut args = vec![
        "--msp-dir",
        &msp,
        "--mspid",
        "OrdererMSP",
        "--no-dev-channel",
        "--admin-tls-cert",
        &cert,
        "--admin-tls-key",
        &key,
    ];
    args.extend_from_slice(extra);
    let node = NodeProc::start(dir, &args);
    assert!(node.banner.iter().any(|l| l.starts_with("admin endpoint on https://")), "{:?}", node.banner);
    node
}

/// Who runs `consenter-host channel ...`: the TLS client files.
enum As {
    /// TLS, trusting `ca`, with a client certificate and its key.
    Cert { ca: String, cert: String, key: String },
    /// TLS without a client certificate.
    NoCert,
}

fn channel(admin: &str, who: As, args: &[&str]) -> (bool, String) {
    let mut v: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    v.extend(["-o".to_string(), admin.to_string()]);
    match who {
        As::Cert { ca, cert, key } => {
            v.extend(["--ca-file".to_string(), ca, "--client-cert".to_string(), cert, "--client-key".to_string(), key])
        }
        As::NoCert => v.extend(["--ca-file".to_string(), tlsca()]),
    }
    let v: Vec<&str> = v.iter().map(String::as_str).collect();
    cli(&v)
}

/// TLS trusting `ca`, with `dir/name.crt` and `dir/name.key`.
fn client(ca: String, dir: String, name: &str) -> As {
    As::Cert { ca, cert: format!("{dir}/{name}.crt"), key: format!("{dir}/{name}.key") }
}

/// Admin@example.com: the orderer org's admin.
fn admin_user() -> As {
    client(tlsca(), orderer_org("users/Admin@example.com/tls"), "client")
}

/// orderer1's TLS server certificate (it has the clientAuth EKU too).
fn orderer1() -> As {
    client(tlsca(), orderer_org("orderers/orderer1.example.com/tls"), "server")
}

/// User1@org1.example.com: issued by Org1's TLS CA.
fn org1_user() -> As {
    client(tlsca(), org1("users/User1@org1.example.com/tls"), "client")
}

/// The CLI failed before any HTTP answer.
fn refused(r: &(bool, String)) -> &str {
    assert!(!r.0, "expected a refusal: {}", r.1);
    assert!(!r.1.contains("Status:"), "no HTTP answer expected: {}", r.1);
    &r.1
}

#[test]
fn orderer_admin_joins_and_lists_over_mutual_tls() {
    let dir = tempfile::tempdir().unwrap();
    // No --admin-tls-client-ca: the client root CA is orderer0's MSP
    // tlscacerts (the orderer org's TLS CA).
    let node = tls_node(dir.path(), &[]);
    let admin = node.admin.clone().unwrap();
    let genesis = fixtures().join("blocks/solochannel.genesis.block");
    let genesis = genesis.to_str().unwrap();

    let (ok, out) = channel(&admin, admin_user(), &["channel", "join", "-b", genesis]);
    assert!(ok && out.contains("Status: 201"), "{out}");
    assert!(out.contains("\"name\": \"solochannel\"") && out.contains("\"height\": 1"), "{out}");
    let (ok, out) = channel(&admin, admin_user(), &["channel", "list"]);
    assert!(ok && out.contains("Status: 200"), "{out}");
    assert!(out.contains("/participation/v1/channels/solochannel"), "{out}");
    // Without an admin CN list any certificate of the client CA is
    // accepted, as Fabric's osnadmin endpoint does: orderer1's too.
    let (ok, out) = channel(&admin, orderer1(), &["channel", "show", "-c", "solochannel"]);
    assert!(ok && out.contains("Status: 200") && out.contains("\"status\": \"active\""), "{out}");

    // No client certificate: the handshake is refused.
    let r = channel(&admin, As::NoCert, &["channel", "list"]);
    let out = refused(&r);
    assert!(out.contains("TLS with the admin endpoint") && out.contains("requires a client certificate"), "{out}");
    // A client certificate from Org1's TLS CA: refused at the handshake.
    let r = channel(&admin, org1_user(), &["channel", "list"]);
    let out = refused(&r);
    assert!(out.contains("refused the client certificate"), "{out}");
    // Plain HTTP to the TLS endpoint gets no HTTP answer.
    let r = cli(&["channel", "list", "-o", &admin]);
    assert!(refused(&r).contains("does the endpoint speak TLS? pass --ca-file"), "{}", r.1);
    // The client checks the server too: trusting Org1's CA, orderer0's
    // certificate does not verify.
    let wrong_ca = client(org1_tlsca(), orderer_org("users/Admin@example.com/tls"), "client");
    let r = channel(&admin, wrong_ca, &["channel", "list"]);
    let out = refused(&r);
    assert!(out.contains("does not verify against --ca-file"), "{out}");

    // A client that connects and never says hello does not hold up the
    // others (handshakes run beside the accept loop; a stalled one only
    // ends at the 10 s handshake timeout).
    let _stalled = std::net::TcpStream::connect(&admin).unwrap();
    let t = Instant::now();
    let (ok, out) = channel(&admin, admin_user(), &["channel", "list"]);
    assert!(ok && out.contains("Status: 200"), "{out}");
    assert!(t.elapsed() < Duration::from_secs(5), "waited {:?} behind a stalled handshake", t.elapsed());

    // Failed handshakes did not stop the endpoint.
    let (ok, out) = channel(&admin, admin_user(), &["channel", "remove", "-c", "solochannel"]);
    assert!(ok && out.contains("Status: 204"), "{out}");
    assert!(!dir.path().join("chains/solochannel").exists());
}

#[test]
fn admin_cn_list_gives_other_certificates_403() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, ca1) = (tlsca(), org1_tlsca());
    let node = tls_node(
        dir.path(),
        &["--admin-tls-client-ca", &ca, "--admin-tls-client-ca", &ca1, "--admin-client-cn", "Admin@example.com"],
    );
    let admin = node.admin.clone().unwrap();
    // orderer1's TLS certificate chains to the client CA and has the
    // clientAuth EKU, but its CN is not an admin.
    let (ok, out) = channel(&admin, orderer1(), &["channel", "list"]);
    assert!(!ok && out.contains("Status: 403"), "{out}");
    assert!(out.contains("\"orderer1.example.com\" is not an admin of this node"), "{out}");
    // User1@org1 chains to the second client CA: past the handshake, but
    // not an admin either.
    let (ok, out) = channel(&admin, org1_user(), &["channel", "list"]);
    assert!(!ok && out.contains("Status: 403") && out.contains("\"User1@org1.example.com\" is not an admin"), "{out}");
    // The admin is.
    let genesis = fixtures().join("blocks/solochannel.genesis.block");
    let (ok, out) = channel(&admin, admin_user(), &["channel", "join", "-b", genesis.to_str().unwrap()]);
    assert!(ok && out.contains("Status: 201"), "{out}");
    let (ok, out) = channel(&admin, admin_user(), &["channel", "list"]);
    assert!(ok && out.contains("Status: 200") && out.contains("solochannel"), "{out}");
}

#[test]
fn tls_admin_endpoint_listens_on_any_address() {
    let dir = tempfile::tempdir().unwrap();
    // Only Org1's TLS CA: the MSP default is replaced, not added to.
    let ca1 = org1_tlsca();
    let node = tls_node(dir.path(), &["--admin-listen", "0.0.0.0:0", "--admin-tls-client-ca", &ca1]);
    let admin = node.admin.clone().unwrap();
    let port = admin.strip_prefix("0.0.0.0:").unwrap_or_else(|| panic!("listening on {admin}"));
    let admin = format!("127.0.0.1:{port}");
    let (ok, out) = channel(&admin, org1_user(), &["channel", "list"]);
    assert!(ok && out.contains("Status: 200") && out.contains("\"channels\": null"), "{out}");
    let r = channel(&admin, admin_user(), &["channel", "list"]);
    assert!(refused(&r).contains("refused the client certificate"), "{}", r.1);
}

/// Runs `consenter-host start ARGS`, which must refuse to start; returns
/// its output. Fails at once if the node starts listening.
fn start_refused(data_dir: &Path, args: &[&str]) -> String {
    let mut child = Command::new(env!("CARGO_BIN_EXE_consenter-host"))
        .arg("start")
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--listen", "127.0.0.1:0", "--no-dev-channel"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = String::new();
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        if line.starts_with("consenter-host listening on") {
            let _ = child.kill();
            panic!("the node started with {args:?}");
        }
        out.push_str(&line);
        out.push('\n');
    }
    child.stderr.take().unwrap().read_to_string(&mut out).unwrap();
    assert!(!child.wait().unwrap().success(), "{out}");
    out
}

#[test]
fn admin_tls_flags_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (cert, key) = (
        orderer_org("orderers/orderer0.example.com/tls/server.crt"),
        orderer_org("orderers/orderer0.example.com/tls/server.key"),
    );
    let out = start_refused(d, &["--admin-tls-cert", &cert]);
    assert!(out.contains("--admin-tls-key"), "{out}");
    let out = start_refused(d, &["--admin-tls-key", &key]);
    assert!(out.contains("--admin-tls-cert"), "{out}");
    let out = start_refused(d, &["--admin-client-cn", "Admin@example.com"]);
    assert!(out.contains("--admin-tls-cert"), "{out}");
    // A file that is not there is named.
    let ca = tlsca();
    let missing = d.join("nope.key");
    let out = start_refused(
        d,
        &["--admin-tls-cert", &cert, "--admin-tls-key", missing.to_str().unwrap(), "--admin-tls-client-ca", &ca],
    );
    assert!(out.contains("reading admin TLS key") && out.contains("nope.key"), "{out}");
    // A key that is not the certificate's.
    let other = orderer_org("orderers/orderer1.example.com/tls/server.key");
    let out = start_refused(d, &["--admin-tls-cert", &cert, "--admin-tls-key", &other, "--admin-tls-client-ca", &ca]);
    assert!(out.contains("orderer1.example.com/tls/server.key"), "{out}");
    // The development identity has no tlscacerts: the client CA must be
    // given.
    let out = start_refused(d, &["--admin-tls-cert", &cert, "--admin-tls-key", &key]);
    assert!(out.contains("--admin-tls-client-ca") && out.contains("tlscacerts"), "{out}");

    // The CLI's client flags come in pairs, and need --ca-file.
    let (ok, out) = cli(&["channel", "list", "--ca-file", &ca, "--client-cert", &cert]);
    assert!(!ok && out.contains("--client-key"), "{out}");
    let (ok, out) = cli(&["channel", "list", "--client-cert", &cert, "--client-key", &key]);
    assert!(!ok && out.contains("--ca-file"), "{out}");
}

#[test]
fn channel_commands_take_the_tls_flag_names_and_a_server_name() {
    let dir = tempfile::tempdir().unwrap();
    let node = tls_node(dir.path(), &[]);
    let admin = node.admin.clone().unwrap();
    let (cert, key) =
        (orderer_org("users/Admin@example.com/tls/client.crt"), orderer_org("users/Admin@example.com/tls/client.key"));
    let tls_flags = ["--tls-root-ca", &tlsca(), "--tls-client-cert", &cert, "--tls-client-key", &key];
    let run = |extra: &[&str]| {
        let mut v = vec!["channel", "list", "-o", &admin];
        v.extend_from_slice(&tls_flags);
        v.extend_from_slice(extra);
        cli(&v)
    };
    // --tls-root-ca/--tls-client-cert/--tls-client-key are osnadmin's
    // --ca-file/--client-cert/--client-key.
    let (ok, out) = run(&[]);
    assert!(ok && out.contains("Status: 200"), "{out}");
    // The certificate's DNS name instead of the address's IP.
    let (ok, out) = run(&["--tls-server-name", "orderer0.example.com"]);
    assert!(ok && out.contains("Status: 200"), "{out}");
    // A name the certificate does not carry.
    let r = run(&["--tls-server-name", "orderer1.example.com"]);
    assert!(refused(&r).contains("not valid for name \"orderer1.example.com\""), "{}", r.1);
}
