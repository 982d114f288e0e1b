//! The operations endpoint on real node processes: Fabric's metrics move
//! as Broadcast, Deliver, the ledger and a crashing plugin make them move;
//! `/healthz` turns 503 while a channel is down and 200 after its restart;
//! `/logspec` changes what is logged without a restart; `/version`; the
//! status page in a real headless Chromium; and Fabric's own
//! sampleconfig/orderer.yaml, with ORDERER_* overrides, running a node
//! that serves a channel.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use consenter_host::channel::ChannelTemplate;
use consenter_host::ledger::Ledger;
use consenter_host::node::channel_dir;
use consenter_host::proto::common::Envelope;
use prost::Message;

use common::*;

const SUCCESS: i32 = 200;
const SERVICE_UNAVAILABLE: i32 = 503;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures/fabric")
}

/// Polls `f` every 50 ms until it holds (at most `secs` seconds).
async fn until(secs: u64, what: &str, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn json(a: &consenter_host::admin::HttpAnswer) -> serde_json::Value {
    serde_json::from_slice(&a.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&a.body)))
}

/// A healthy solo channel (5 envelopes a block) and a hostile channel
/// whose plugin traps on the envelope `boom` and is reloaded after 1.5 s.
fn prepare(data: &Path) {
    for (name, consensus, mode) in [("healthy", "solo", ""), ("poison", "hostile", "poison:boom")] {
        let mut t = ChannelTemplate::solo(name);
        t.consensus_type = consensus.into();
        t.consensus_metadata = Bytes::from(mode.as_bytes().to_vec());
        t.batch_size.max_message_count = 5;
        t.batch_timeout = Duration::from_secs(30);
        let l = Ledger::open(&channel_dir(data, name)).unwrap();
        l.append(&[t.genesis_block().encode_to_vec().into()]).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_health_and_logspec_follow_the_node() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    prepare(&d.join("data"));
    let hostile = format!("hostile={}", consenter_test_plugins::path("consenter_hostile.wasm").display());
    let log = d.join("node.log");
    let node = NodeProc::start_logged(
        &d.join("data"),
        &[
            "--no-dev-channel",
            "--allow-unsigned-plugins",
            "--plugin",
            &hostile,
            "--restart-policy",
            "channel:poison=reload",
            "--restart-backoff-initial",
            "1500ms",
        ],
        &log,
    );
    let mut c = node.client().await;

    // Healthy, with Fabric's shape.
    let h = node.ops("GET", "/healthz", None);
    assert_eq!(h.status, 200);
    let body = json(&h);
    assert_eq!(body["status"], "OK");
    assert!(body["time"].as_str().is_some_and(|t| t.ends_with('Z') && t.contains('T')), "{body}");
    assert!(body.get("failed_checks").is_none());
    assert!(h.header("x-request-id").is_some());
    assert_eq!(node.ops("POST", "/healthz", None).status, 405);
    let v = node.ops("GET", "/version", None);
    assert_eq!((v.status, json(&v)["Version"].as_str()), (200, Some(env!("CARGO_PKG_VERSION"))));
    assert_eq!(node.ops("PUT", "/version", None).status, 400);

    // Broadcast by status, Deliver, height.
    let m = |s: &str| node.metric(s).unwrap_or(0.0);
    let before = m(r#"deliver_streams_opened"#);
    let envs = (0..5).map(|i| message("healthy", &format!("h{i}"), 100)).collect();
    for (st, info) in broadcast_all(&mut c, envs).await {
        assert_eq!(st, SUCCESS, "{info}");
    }
    let (st, _) = broadcast_all(&mut c, vec![message("nope", "x", 10)]).await.remove(0);
    assert_eq!(st, 404);
    let (st, _) = broadcast_all(&mut c, vec![Envelope::default()]).await.remove(0);
    assert_eq!(st, 400);
    assert_eq!(deliver(&mut c, "healthy", 0, 1).await.len(), 2);
    assert_eq!(m(r#"broadcast_processed_count{channel="healthy",type="MESSAGE",status="SUCCESS"}"#), 5.0);
    assert_eq!(m(r#"broadcast_processed_count{channel="nope",type="MESSAGE",status="NOT_FOUND"}"#), 1.0);
    assert_eq!(m(r#"broadcast_processed_count{channel="",type="",status="BAD_REQUEST"}"#), 1.0);
    assert_eq!(m(r#"broadcast_validate_duration_count{channel="healthy",type="MESSAGE",status="SUCCESS"}"#), 5.0);
    assert_eq!(m(r#"broadcast_enqueue_duration_count{channel="healthy",type="MESSAGE",status="SUCCESS"}"#), 5.0);
    assert_eq!(m(r#"deliver_blocks_sent{channel="healthy",filtered="false",data_type="block"}"#), 2.0);
    assert_eq!(
        m(r#"deliver_requests_completed{channel="healthy",filtered="false",data_type="block",success="true"}"#),
        1.0
    );
    assert!(m("deliver_streams_opened") >= before + 1.0);
    assert_eq!(m(r#"ledger_blockchain_height{channel="healthy"}"#), 2.0);
    assert!(m(r#"ledger_blockstorage_commit_time_count{channel="healthy"}"#) >= 1.0);
    assert_eq!(m(r#"blockcutter_block_fill_duration_count{channel="healthy"}"#), 1.0);
    assert!(m(r#"consenter_plugin_calls{channel="healthy",plugin="solo",call="enqueue"}"#) >= 1.0);
    assert_eq!(m(r#"participation_status{channel="healthy"}"#), 1.0);
    assert_eq!(m(r#"participation_consensus_relation{channel="healthy"}"#), 1.0);
    let text = String::from_utf8(node.ops("GET", "/metrics", None).body).unwrap();
    for name in [
        "# TYPE broadcast_validate_duration histogram",
        "# HELP broadcast_processed_count The number of transactions processed.",
    ] {
        assert!(text.contains(name), "{name} missing");
    }
    assert!(
        metric_in(&text, r#"consenter_plugin_cache_misses{plugin="hostile"}"#).is_some()
            || metric_in(&text, r#"consenter_plugin_cache_hits{plugin="hostile"}"#).is_some()
    );

    // A plugin trap: 503 with the channel named, then back after the restart.
    for tx in ["a", "b"] {
        assert_eq!(broadcast_all(&mut c, vec![message("poison", tx, 10)]).await[0].0, SUCCESS);
    }
    let (st, info) = broadcast_all(&mut c, vec![message("poison", "boom", 10)]).await.remove(0);
    assert_eq!(st, SERVICE_UNAVAILABLE, "{info}");
    let h = node.ops("GET", "/healthz", None);
    assert_eq!(h.status, 503, "{}", String::from_utf8_lossy(&h.body));
    let body = json(&h);
    assert_eq!(body["status"], "Service Unavailable");
    let failed = body["failed_checks"].as_array().unwrap();
    assert_eq!(failed.len(), 1, "{body}");
    assert_eq!(failed[0]["component"], "poison");
    assert!(failed[0]["reason"].as_str().unwrap().contains("unreachable"), "{body}");
    assert_eq!(m(r#"participation_status{channel="poison"}"#), 3.0);
    until(10, "/healthz back to 200 after the restart", || node.ops("GET", "/healthz", None).status == 200).await;
    assert_eq!(m(r#"consenter_plugin_traps{channel="poison",plugin="hostile",call="enqueue"}"#), 1.0);
    assert_eq!(m(r#"consenter_plugin_crashes{channel="poison"}"#), 1.0);
    assert_eq!(m(r#"consenter_plugin_restarts{channel="poison"}"#), 1.0);
    assert_eq!(m(r#"participation_status{channel="poison"}"#), 1.0);
    assert_eq!(m(r#"broadcast_processed_count{channel="poison",type="MESSAGE",status="SERVICE_UNAVAILABLE"}"#), 1.0);

    // The status page's data shows the crash.
    let s = json(&node.ops("GET", "/status.json", None));
    let poison = s["channels"].as_array().unwrap().iter().find(|c| c["name"] == "poison").unwrap().clone();
    assert_eq!((&poison["crashes"], &poison["restarts"], &poison["state"]), (&1.into(), &1.into(), &"running".into()));
    assert!(poison["last_crash"].as_str().unwrap().contains("unreachable"), "{poison}");

    // /logspec: Fabric's syntax, changed without a restart.
    let spec = |node: &NodeProc| json(&node.ops("GET", "/logspec", None))["spec"].as_str().unwrap().to_string();
    assert_eq!(spec(&node), "info");
    let debug_lines = || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("DEBU [consenter_host::operations]") && l.contains("operations request"))
            .count()
    };
    node.ops("GET", "/healthz", None);
    assert_eq!(debug_lines(), 0, "no debug lines at info");
    let put =
        |s: &str| node.ops("PUT", "/logspec", Some(("application/json", format!("{{\"spec\":\"{s}\"}}").as_bytes())));
    assert_eq!(put("info:consenter_host::operations=debug").status, 204);
    assert_eq!(spec(&node), "consenter_host::operations=debug:info");
    node.ops("GET", "/healthz", None);
    until(10, "a debug line of the operations endpoint", || debug_lines() > 0).await;
    let bad = put("info:chatty");
    assert_eq!(bad.status, 400);
    assert_eq!(json(&bad)["error"], "invalid logging specification 'info:chatty': bad segment 'chatty'");
    assert_eq!(put("info").status, 204);
    let n = debug_lines();
    node.ops("GET", "/healthz", None);
    node.ops("GET", "/version", None);
    assert_eq!(debug_lines(), n, "back at info: no more debug lines");
    // Every chain line names its channel (Fabric's format, logfmt fields).
    let text = std::fs::read_to_string(&log).unwrap();
    let chain_lines: Vec<&str> = text.lines().filter(|l| l.contains("[consenter_host::chain")).collect();
    assert!(!chain_lines.is_empty());
    for l in chain_lines {
        assert!(l.contains(" channel="), "no channel: {l}");
        assert!(l.split(' ').nth(4).is_some_and(|lvl| ["INFO", "WARN", "ERRO", "DEBU"].contains(&lvl)), "{l}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_carry_the_channel() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("node.log");
    let node = NodeProc::start_logged(&dir.path().join("data"), &["--log-format", "json"], &log);
    drop(node);
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).expect(l)).collect();
    let started = lines.iter().find(|l| l["msg"] == "chain started").expect("a chain started line");
    assert_eq!(started["channel"], "devchannel");
    assert_eq!(started["level"], "info");
    assert_eq!(started["name"], "consenter_host::node");
    assert!(started["ts"].as_f64().is_some() && started["caller"].as_str().is_some_and(|c| c.contains(".rs:")));
}

/// Fabric's own sampleconfig/orderer.yaml, unchanged, found through
/// FABRIC_CFG_PATH, with the overrides a container would set: the node
/// starts, lists the ignored Fabric settings once, joins a channel through
/// the participation API and orders a transaction.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fabric_sampleconfig_with_orderer_variables_serves_a_channel() {
    let dir = tempfile::tempdir().unwrap();
    let f = fixtures();
    let orderer0 = f.join("crypto/ordererOrganizations/example.com/orderers/orderer0.example.com/msp");
    let log = dir.path().join("node.log");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_consenter-host"));
    cmd.arg("start")
        .env("FABRIC_CFG_PATH", f.join("sampleconfig"))
        .env("ORDERER_GENERAL_LISTENPORT", "0")
        .env("ORDERER_GENERAL_LOCALMSPDIR", &orderer0)
        .env("ORDERER_GENERAL_LOCALMSPID", "OrdererMSP")
        .env("ORDERER_GENERAL_BOOTSTRAPMETHOD", "none")
        .env("ORDERER_FILELEDGER_LOCATION", dir.path().join("ledger"))
        .env("ORDERER_ADMIN_LISTENADDRESS", "127.0.0.1:0")
        .env("ORDERER_OPERATIONS_LISTENADDRESS", "127.0.0.1:0")
        .env("ORDERER_CHANNELPARTICIPATION_ENABLED", "true")
        .env("ORDERER_METRICS_PROVIDER", "prometheus")
        .env_remove("RUST_LOG");
    let node = NodeProc::spawn_as_is(cmd, std::fs::File::create(&log).unwrap().into(), false);
    let admin = node.admin.clone().unwrap();
    let block = f.join("blocks/solochannel.genesis.block");
    let (ok, out) = cli(&["channel", "join", "-o", &admin, "-b", block.to_str().unwrap()]);
    assert!(ok, "{out}");
    let user = consenter_host::signer::Signer::from_msp_dir(
        &f.join("crypto/peerOrganizations/org1.example.com/users/User1@org1.example.com/msp"),
        "Org1MSP",
    )
    .unwrap();
    let mut c = node.client().await;
    let (st, info) = broadcast_all(&mut c, vec![signed_message("solochannel", "t1", 100, Some(&user))]).await.remove(0);
    assert_eq!(st, SUCCESS, "{info}");
    // BatchTimeout 2s cuts block 1.
    until(15, "block 1 of solochannel", || {
        node.metric(r#"ledger_blockchain_height{channel="solochannel"}"#) == Some(2.0)
    })
    .await;
    let text = std::fs::read_to_string(&log).unwrap();
    let ignored: Vec<&str> = text.lines().filter(|l| l.contains("Fabric settings this node does not use")).collect();
    assert_eq!(ignored.len(), 1, "{text}");
    assert!(ignored[0].contains("Kafka") && ignored[0].contains("General.BCCSP"), "{}", ignored[0]);
    assert!(!text.contains("unknown setting"), "{text}");
    assert!(text.contains("orderer.yaml"), "names the file read");
    drop(node);

    // `config show` says where each value came from.
    let out = Command::new(env!("CARGO_BIN_EXE_consenter-host"))
        .args(["config", "show", "--listen", "127.0.0.1:7999"])
        .env("FABRIC_CFG_PATH", f.join("sampleconfig"))
        .env("ORDERER_GENERAL_LOCALMSPID", "OrdererMSP")
        .env("ORDERER_GENERAL_BOOTSTRAPMETHOD", "none")
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    let show = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success(), "{show}");
    let line =
        |k: &str| show.lines().find(|l| l.starts_with(&format!("{k} "))).unwrap_or_else(|| panic!("{k}: {show}"));
    assert!(line("General.ListenPort").contains("7999") && line("General.ListenPort").contains("# flag --listen"));
    assert!(line("General.LocalMSPID").contains("# env ORDERER_GENERAL_LOCALMSPID"));
    assert!(line("Admin.ListenAddress").contains("127.0.0.1:9443") && line("Admin.ListenAddress").contains("# file "));
    assert!(line("ConsenterHost.PluginMemoryMiB").contains("# default"));
    assert!(show.contains("# ignored (Fabric settings this node does not use): "));

    // A wrong type names the key and the value.
    let (ok, out) = cli(&["config", "show", "--config", dir.path().join("nope.yaml").to_str().unwrap()]);
    assert!(!ok && out.contains("nope.yaml"), "{out}");
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "General:\n  ListenPort: lots\n").unwrap();
    let (ok, out) = cli(&["start", "--config", bad.to_str().unwrap()]);
    assert!(!ok && out.contains("General.ListenPort = \"lots\"") && out.contains("port number"), "{out}");
}

/// The participation API answers 503 when the file turns it off, as Fabric.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn participation_disabled_by_the_file_is_503() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("orderer.yaml");
    std::fs::write(&cfg, "ChannelParticipation:\n  Enabled: false\nMetrics:\n  Provider: disabled\n").unwrap();
    let node = NodeProc::start(&dir.path().join("data"), &["--config", cfg.to_str().unwrap()]);
    let a = consenter_host::admin::request(node.admin.as_deref().unwrap(), "GET", "/participation/v1/channels", None)
        .unwrap();
    assert_eq!(a.status, 503);
    assert_eq!(a.error_text(), "channel participation API is disabled");
    assert_eq!(node.ops("GET", "/metrics", None).status, 404, "Metrics.Provider disabled");
    assert_eq!(node.ops("GET", "/healthz", None).status, 200);
}

fn chromium() -> Option<PathBuf> {
    ["chromium", "chromium-browser", "google-chrome", "headless_shell"].iter().find_map(|b| {
        let ok = Command::new(b).arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().ok()?;
        ok.success().then(|| PathBuf::from(b))
    })
}

/// The status page in a real headless Chromium (Debian's `chromium`): the
/// DOM has the channel after the page's script refreshed it, and a
/// screenshot is taken. Skipped, saying so, where no browser is installed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_in_headless_chromium() {
    let Some(browser) = chromium() else {
        eprintln!("SKIPPED status_page_in_headless_chromium: no chromium on this machine (apt-get install chromium)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let node = NodeProc::start(&dir.path().join("data"), &["--dev-batch-timeout", "100ms"]);
    let mut c = node.client().await;
    let envs = (0..20).map(|i| message("devchannel", &format!("p{i}"), 100)).collect();
    for (st, info) in broadcast_all(&mut c, envs).await {
        assert_eq!(st, SUCCESS, "{info}");
    }
    let url = format!("http://{}/", node.operations.as_deref().unwrap());
    let run = |extra: &[&str]| {
        let profile = dir.path().join("chromium-profile");
        Command::new(&browser)
            .args(["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--virtual-time-budget=4000"])
            .arg(format!("--user-data-dir={}", profile.display()))
            .args(extra)
            .arg(&url)
            .stderr(Stdio::null())
            .output()
            .expect("running chromium")
    };
    let dom = String::from_utf8_lossy(&run(&["--dump-dom"]).stdout).into_owned();
    assert!(dom.contains("data-channel=\"devchannel\""), "{dom}");
    assert!(dom.contains("data-refreshed="), "the page's script refreshed it from /status.json: {dom}");
    assert!(dom.contains("<svg class=\"plot\""), "{dom}");
    let shot =
        std::env::var_os("STATUS_PAGE_SCREENSHOT").map(PathBuf::from).unwrap_or_else(|| dir.path().join("status.png"));
    let out = run(&["--window-size=1400,320", &format!("--screenshot={}", shot.display())]);
    let png = std::fs::read(&shot).unwrap_or_else(|e| panic!("no screenshot ({e}): {out:?}"));
    assert!(png.starts_with(b"\x89PNG") && png.len() > 5_000, "a real screenshot ({} bytes)", png.len());
}

/// Operations.TLS: with client root CAs a client certificate is required
/// (ClientAuthRequired); without them, the TLS endpoint serves /healthz and
/// /version to anyone and answers 401 on /metrics, /logspec and the page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operations_tls_as_fabric() {
    let org = fixtures().join("crypto/ordererOrganizations/example.com");
    let s = |p: &str| org.join(p).to_string_lossy().into_owned();
    let (cert, key) =
        (s("orderers/orderer0.example.com/tls/server.crt"), s("orderers/orderer0.example.com/tls/server.key"));
    let ca = org.join("tlsca/tlsca.example.com-cert.pem");
    let (ccert, ckey) =
        (org.join("users/Admin@example.com/tls/client.crt"), org.join("users/Admin@example.com/tls/client.key"));
    let client = |identity: bool| consenter_host::admin::ClientTls {
        config: Some(
            consenter_host::admin::tls::client_config(&ca, identity.then_some((ccert.as_path(), ckey.as_path())))
                .unwrap(),
        ),
        has_client_cert: identity,
        ..Default::default()
    };
    let get = |node: &NodeProc, tls: &consenter_host::admin::ClientTls, path: &str| {
        consenter_host::admin::request_with(node.operations.as_deref().unwrap(), tls, "GET", path, None)
    };

    let dir = tempfile::tempdir().unwrap();
    let required = NodeProc::start(
        &dir.path().join("a"),
        &[
            "--operations-tls-cert",
            &cert,
            "--operations-tls-key",
            &key,
            "--operations-tls-client-ca",
            ca.to_str().unwrap(),
        ],
    );
    assert!(required.banner.iter().any(|l| l.starts_with("operations endpoint on https://")), "{:?}", required.banner);
    assert_eq!(get(&required, &client(true), "/metrics").unwrap().status, 200);
    assert!(get(&required, &client(false), "/healthz").is_err(), "no client certificate: refused");

    let optional =
        NodeProc::start(&dir.path().join("b"), &["--operations-tls-cert", &cert, "--operations-tls-key", &key]);
    assert_eq!(get(&optional, &client(false), "/healthz").unwrap().status, 200);
    assert_eq!(get(&optional, &client(false), "/version").unwrap().status, 200);
    for path in ["/metrics", "/logspec", "/"] {
        assert_eq!(get(&optional, &client(false), path).unwrap().status, 401, "{path}");
    }
}
